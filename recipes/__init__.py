"""Recipe scripts (run them: `accelerate launch recipes/distil_bert.py CONFIG`); a package only so that tests can
import them as `recipes.distil_bert`. Their shared code lives in `hf_distill.recipes`."""
