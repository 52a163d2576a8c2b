"""The training toolkit: MNIST-style data (``data``), models by name (``models``), the
training loop (``loop``), crash-safe checkpoints (``checkpoint``), fine-tuning
(``finetune``), the recipes' command line and runs (``recipe``) and the optimizer
comparison (``sweep``). Needs the ``recipes`` extra (GluonCV, tqdm, matplotlib) for
zoo models, progress bars and plots."""
