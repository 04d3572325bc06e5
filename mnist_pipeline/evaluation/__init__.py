"""What the results say: test metrics, their plots, and the model cards written from them."""
