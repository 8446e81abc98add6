"""Counterfactual image generators built from diffusers parts: the embedded model and Stable Diffusion.

Imported only when one of them is chosen: diffusers and transformers cost seconds to import.
"""
