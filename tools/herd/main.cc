// The herd command-line tool. All logic lives in tools/ (herd_tools).
#include "tools/commands.h"

int main(int argc, char** argv) { return herd::RunCli(argc, argv); }
