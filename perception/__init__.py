"""Image encoders and augmentation."""
