"""The modules methods are built from: BiFPN self-teachers (bifpn), auxiliary branches on a backbone's stages
(branches) and batch mixing (batch_transforms). They register nothing."""
