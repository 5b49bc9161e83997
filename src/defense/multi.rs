//! Multi-perturbation adversarial training (to come).
