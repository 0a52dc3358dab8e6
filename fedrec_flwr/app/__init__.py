"""Flower entry points: the ClientApp and the ServerApp (thin; the work is elsewhere)."""
