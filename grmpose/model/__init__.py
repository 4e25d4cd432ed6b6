"""The grmpose network: backbone, GRM, MFA, adaptive convolutions and heads."""
