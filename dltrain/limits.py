"""Limits that both the data code and the CLI read, in a module that imports nothing: `dltrain predict --help`
shows their values without importing the data package."""

# Pillow's own default (Image.MAX_IMAGE_PIXELS, a quarter GiB as 24-bit RGB): far above any photo a camera takes
# (50 megapixels), far below what would exhaust memory. data.max_image_pixels and predict's --max-image-pixels.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
