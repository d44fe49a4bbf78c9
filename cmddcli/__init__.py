"""cmdd: CMDDNet single-image defocus deblurring as a photo tool."""

__version__ = "0.1.0"
