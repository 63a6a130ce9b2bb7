"""The edge node: local training and the client side of the QFLARE protocol."""
