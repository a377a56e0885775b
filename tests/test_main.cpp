// GoogleTest entry point: quiet logging and a fixed thread count so results are reproducible.
#include <gtest/gtest.h>

#include "hetmoe/core/logging.h"

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  hetmoe::init_logging(0, "warn");
  return RUN_ALL_TESTS();
}
