"""mechlab: train small transformers on toy tasks and reverse-engineer their circuits."""
import warnings

# TransformerLens imports `tqdm.auto`, which warns in every notebook without ipywidgets that its
# widget bar is unavailable. tqdm falls back to the text bar, which is what we want in reports, so
# this one warning is noise: silence it (only it) before anything imports TransformerLens.
warnings.filterwarnings("ignore", message="IProgress not found")
