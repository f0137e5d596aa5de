"""Image encoders, augmentation, and resizing of camera frames."""
