"""The examples behind the ``ember`` command (the introductory scale model, the VAE of Kingma &
Welling, Attend-Infer-Repeat of Eslami et al., normalizing flows) as reusable code."""
