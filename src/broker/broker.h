/* broker.h: being written. */
#include "ferry.h"
