# T5-Efficient pretraining reproducer: build, test, run.
#
#   make            build every program into bin/
#   make test       all tests; the last line is "N passed, N failed"
#   make run        install missing packages (as root), build, train a small model on the
#                   bundled sample corpus with 2 MPI ranks
#   make bench      speed and memory measurements (tiny, small; xl-nl2 tensor parallel)
#   make deps       install the Debian packages this project needs (root)
#
# Every .c file under common/ pretrain/ data/ parallel/ ckpt/ is library code, except
# *_main.c files: each of those is one program, bin/<name> for <name>_main.c.
# Unit tests are tests/unit/test_*.c; each is built twice (plain, and ASan+UBSan).

CC       := mpicc
CXX      := g++
BLASDIR  := /usr/lib/x86_64-linux-gnu/openblas-openmp
BLASINC  := /usr/include/x86_64-linux-gnu/openblas-openmp
CPPFLAGS := -I. -I$(BLASINC) -D_GNU_SOURCE
CFLAGS   ?= -O2
CFLAGS   += -std=c11 -Wall -Wextra -Werror -fopenmp -g
CXXFLAGS ?= -O2
CXXFLAGS += -std=c++17 -Wall -Wextra -Werror -fopenmp -g
LDLIBS   := -L$(BLASDIR) -Wl,--disable-new-dtags -Wl,-rpath,$(BLASDIR) -lopenblas -lscalapack-openmpi -ldnnl -larchive -ljansson -lzstd -lz -lxxhash \
            -lsentencepiece -lstdc++ -fopenmp -lm -lpthread
SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

MODULES   := common pretrain data parallel ckpt
LIB_C     := $(filter-out %_main.c,$(foreach m,$(MODULES),$(wildcard $(m)/*.c)))
LIB_CXX   := $(foreach m,$(MODULES),$(wildcard $(m)/*.cc))
MAIN_C    := $(foreach m,$(MODULES),$(wildcard $(m)/*_main.c))
PROGRAMS  := $(patsubst %_main.c,bin/%,$(notdir $(MAIN_C)))
TEST_C    := $(wildcard tests/unit/test_*.c)
TESTS     := $(patsubst tests/unit/%.c,build/tests/%,$(TEST_C))
TESTS_SAN := $(patsubst tests/unit/%.c,build/asan/%,$(TEST_C))

OBJ       := $(patsubst %.c,build/obj/%.o,$(LIB_C)) $(patsubst %.cc,build/obj/%.o,$(LIB_CXX))
OBJ_SAN   := $(patsubst %.c,build/san/%.o,$(LIB_C)) $(patsubst %.cc,build/san/%.o,$(LIB_CXX))
HEADERS   := $(foreach m,$(MODULES) tests/unit,$(wildcard $(m)/*.h))

.PHONY: all test unit-tests run bench deps clean sample-data
all: $(PROGRAMS)

build/obj/%.o: %.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c $< -o $@
build/obj/%.o: %.cc $(HEADERS)
	@mkdir -p $(dir $@)
	$(CXX) $(CPPFLAGS) $(CXXFLAGS) -c $< -o $@
build/san/%.o: %.c $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(SANFLAGS) -c $< -o $@
build/san/%.o: %.cc $(HEADERS)
	@mkdir -p $(dir $@)
	$(CXX) $(CPPFLAGS) $(CXXFLAGS) $(SANFLAGS) -c $< -o $@

build/libt5.a: $(OBJ)
	@rm -f $@
	ar rcs $@ $^
build/libt5-san.a: $(OBJ_SAN)
	@rm -f $@
	ar rcs $@ $^

# Program rule: bin/NAME from the NAME_main.c found in any module.
define PROGRAM_RULE
bin/$(patsubst %_main.c,%,$(notdir $(1))): $(1) build/libt5.a $(HEADERS)
	@mkdir -p bin
	$$(CC) $$(CPPFLAGS) $$(CFLAGS) $(1) build/libt5.a -o $$@ $$(LDLIBS)
endef
$(foreach m,$(MAIN_C),$(eval $(call PROGRAM_RULE,$(m))))

build/tests/%: tests/unit/%.c build/libt5.a $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $< build/libt5.a -o $@ $(LDLIBS)
build/asan/%: tests/unit/%.c build/libt5-san.a $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(SANFLAGS) $< build/libt5-san.a -o $@ $(LDLIBS)

unit-tests: $(TESTS) $(TESTS_SAN)

test: all unit-tests
	@bash tests/run.sh

deps:
	@bash jobs/install-deps.sh

run: deps all
	@bash jobs/run-sample.sh

bench: all
	@bash tests/bench.sh
	@bash tests/bench_parallel.sh
	@bash tests/bench_tp.sh

clean:
	rm -rf build bin
