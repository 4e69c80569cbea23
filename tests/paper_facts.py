"""The papers' settings that the config tests check, with where each comes from.

These are facts carried over from the papers and their reference code (the project's shared
notes on the papers, ``papers.md``, beside the checkout, list them with the published results);
``tests/test_paper_facts.py`` checks this module against those notes where they are present.
"""

# Arjovsky, Chintala & Bottou 2017, Algorithm 1; reference code for what the paper leaves out.
WGAN = {
    "lr": 5e-5,              # RMSProp, critic and generator
    "clip_value": 0.01,      # weight clipping c
    "batch_size": 64,
    "n_critic": 5,
    "nz": 100,               # z ~ N(0, I), 100-d
    "alpha": 0.99,           # reference code: torch RMSprop defaults otherwise
    "eps": 1e-8,
    "n_critic_burst": 100,   # reference code: 100 critic iterations while generator iterations < 25
    "burst_below": 25,
    "burst_every": 500,      # ... and whenever generator iterations % 500 == 0
    "mlp_width": 512,        # MLP generator: 4 ReLU layers of 512 units
}

# Gulrajani et al. 2017 (WGAN-GP), the baseline.
WGAN_GP = {"gp_weight": 10.0, "lr": 1e-4, "betas": (0.0, 0.9), "n_critic": 5}

# Graves 2013, eq. 38-41: centered RMSProp with momentum, k inside the root.
GRAVES_RMSPROP = {"alpha": 0.95, "momentum": 0.9, "lr": 1e-4, "eps": 1e-4}

# Graves 2013, Sec. 3: character-level language models.
GRAVES_TEXT = {
    "wikipedia_layers": 7, "wikipedia_units": 700,
    "sequence_length": 100, "reset_every": 100,   # state carried, reset every 100 sequences
    "wikipedia_validation_fraction": 0.04,        # first 96M bytes train, next 4M validation
    "ptb_layers": 1, "ptb_units": 1000,
}

# Graves 2013, Sec. 4-5: handwriting prediction and synthesis.
GRAVES_HANDWRITING = {
    "layers": 3, "units": 400,
    "mixtures": 20, "output_units": 121,          # 20 bivariate Gaussians + end of stroke
    "output_clip": 100.0, "lstm_clip": 10.0,      # derivative clipping, output and LSTM
    "window_gaussians": 10,                       # synthesis: K = 10
    "characters": 57,
}

# Cooijmans et al. 2016, Sec. 5.1: sequential and permuted MNIST.
BN_LSTM = {
    "hidden_size": 100, "lr": 1e-3, "gradient_clip": 1.0, "batch_size": 100,
    "initial_state_noise": 0.1, "gamma_init": 0.1, "steps": 784,
    "train_size": 50_000, "val_size": 10_000,
}
