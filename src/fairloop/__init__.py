"""fairloop: an LLM agent that debugs and repairs bias in image classifiers with counterfactual data.

Importing the package is cheap on purpose: heavy libraries (torch, aif360, lime) are imported by the
modules that need them, so ``fairloop --help`` answers at once.
"""

__version__ = "0.1.0"
