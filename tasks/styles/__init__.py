"""Style explanations: each annotator against a reference, in numbers and words (see `explain`)."""
