/* 3 CPUs x 10 increments of their own word: tools/bench_explorer.py's
   "3 actors x 20 steps, independent".  A word only its CPU touches is a
   local variable of that process; the read and the write are one step each. */
#define N 10
byte counter;

proctype cpu() {
    byte i, v, own;
    do
    :: atomic { i < N -> v = own }
       atomic { own = v + 1; i++ }
    :: atomic { i == N -> break }
    od
}

active proctype invariant() {
end: atomic { !(counter == 0) -> assert(false) }
}

init { atomic { run cpu(); run cpu(); run cpu() } }
