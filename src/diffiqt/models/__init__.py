"""Trained models: checkpoints, the models shipped in ``diffiqt/weights/``, and loading either for enhancement."""
