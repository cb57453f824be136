"""The process around the app: launcher, device choice, lifecycle, memory and metrics."""
