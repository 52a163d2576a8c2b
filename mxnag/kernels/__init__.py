"""How one optimizer step is computed. ``composed`` builds it from NDArray operators
(runs on every context MXNet supports); faster backends follow the same signatures."""
