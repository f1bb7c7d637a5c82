"""Building blocks of the CLIPHaze network: padding, window attention, SS2D, CAM, TrambaDA, U-Net parts."""
