// Placeholder: implemented by the chunk store / disk work.
