"""The client side: the NumPyClient over one user group and its Message-API adapter."""
