"""What the user sees of each feature: texts, HTML, keyboards and callback-data shapes."""
