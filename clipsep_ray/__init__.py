"""clipsep_ray."""
