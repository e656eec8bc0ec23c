"""vlprompt: prompt tuning of frozen vision-language models and ViTs."""

__version__ = "0.1.0"
