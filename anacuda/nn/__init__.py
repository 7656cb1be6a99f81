"""Drop-in quantised layers, model conversion, annealing controllers and freezing."""

from .activation import ANAActivation
from .attention import TernaryMultiheadAttention
from .controller import AlphaController, Decay, NoiseController, auto_groups
from .convert import convert, quantised_modules
from .convert_transformer import ConversionReport
from .freeze import FrozenConv, FrozenLinear, FrozenTernaryLinear, HardQuantizer, HardTokenQuantizer, freeze
from .layers import (ANAConv1d, ANAConv2d, ANAConv3d, ANALinear, AlphaBlendConv1d, AlphaBlendConv2d,
                     AlphaBlendConv3d, AlphaBlendLinear)
from .ternary import BitLinear, DynamicScaleANA, LearnedScaleANA, TernaryLinear

__all__ = ["ANAActivation", "ANALinear", "ANAConv1d", "ANAConv2d", "ANAConv3d", "AlphaBlendLinear",
           "AlphaBlendConv1d", "AlphaBlendConv2d", "AlphaBlendConv3d", "convert", "NoiseController",
           "AlphaController", "Decay", "auto_groups", "freeze", "FrozenLinear", "FrozenConv", "FrozenTernaryLinear", "HardQuantizer",
           "HardTokenQuantizer",
           "quantised_modules", "TernaryLinear", "BitLinear", "DynamicScaleANA", "LearnedScaleANA",
           "TernaryMultiheadAttention",
           "ConversionReport"]
