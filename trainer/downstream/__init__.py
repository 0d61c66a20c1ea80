"""Downstream validation of pretrained encoders: labels, UNETR/classifier networks, protocol, statistics."""
