"""RLHB trainer: rollouts, rewards, PPO/PRO/SFT updates, checkpoints (runs as a background process)."""
