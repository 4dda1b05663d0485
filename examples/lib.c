/* A C library for `wasmsbx compile examples/lib.c --export add --export mul`. */
int add(int a, int b) { return a + b; }
int mul(int a, int b) { return a * b; }
