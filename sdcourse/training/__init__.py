"""Training the tiny Stable Diffusion from scratch: data, CLIP, VAE, U-Net, in small readable stages."""
