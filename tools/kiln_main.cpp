// The kiln command line.
int main() { return 0; }
