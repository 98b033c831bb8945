"""Language-model and speech providers: text in, text or audio out."""
