"""The tiny profile's world: the generated encyclopedia and its tasks, the zoo of small models
pretrained on it, and the archive that shares a built zoo between machines."""
