"""Training ArcFace/CosFace with Partial FC in Paddle: data, losses, classifier, loop."""
