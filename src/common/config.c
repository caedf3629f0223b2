/*  config.c: being written (see config.h).  */
#include "ferry.h"
#include "config.h"
int ferry_config_test (bool verbose); int ferry_config_test (bool verbose) { (void) verbose; return 1; }
