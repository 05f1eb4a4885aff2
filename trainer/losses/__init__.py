"""Pure-torch math of the trainer, one module per concern (import only torch).

- ``masked``: means/variances over real (unpadded) tokens.
- ``gae``: generalized advantage estimation and whitening (RLHB eq. 7-9).
- ``kl``: per-token KL estimators and KL-penalized rewards (RLHB eq. 10).
- ``ppo``: clipped surrogate (eq. 5-6), critic loss (eq. 11), entropy.
- ``discriminator``: behavior-conditioned GAN discriminator loss and rewards (eq. 2-4).
- ``classifier``: multi-head behavior classifier, RLHBC (eq. 1).
- ``bradley_terry``: pairwise reward-model loss, RLHF baseline (eq. 12).
- ``pro``: Preference Ranking Optimization listwise loss (PRO paper eq. 5-11).
"""
