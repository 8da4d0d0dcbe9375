"""The PyTorch side: data, models, losses, distillation and the trainer."""
