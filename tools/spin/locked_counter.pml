/* 3 CPUs x 5 locked increments of one counter: tools/bench_explorer.py's
   "3 actors x 20 steps, spinlock".  One step per explorer step: the lock
   (taken atomically when free), the read, the write, the unlock; the loop
   counter rides on the unlock as the explorer's for loop rides on its step. */
#define N 5
byte counter;
bit lock;

proctype cpu() {
    byte i, v;
    do
    :: atomic { i < N && lock == 0 -> lock = 1 }
       v = counter;
       counter = v + 1;
       atomic { lock = 0; i++ }
    :: atomic { i == N -> break }
    od
}

/* The invariant, checked in every state: blocked until it fails. */
active proctype invariant() {
end: atomic { !(counter <= 3 * N) -> assert(false) }
}

init { atomic { run cpu(); run cpu(); run cpu() } }
