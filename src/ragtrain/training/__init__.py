"""Training: the trainer toolkit, SFT/DPO, reward models and rewards, rejection sampling, RL."""
