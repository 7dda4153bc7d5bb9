// Placeholder: tests land with the code they test.
