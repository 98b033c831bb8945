"""Language-model providers: a conversation in, reply text streamed out."""
