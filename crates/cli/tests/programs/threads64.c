#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <ucontext.h>
#include <unistd.h>
#define N 64
static long count[N], total, helpers;
static double acc[N];
static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
static char alt[N + 2][16384];
/* Each thread its own stack for the crash handler: a crash with a bad
 * stack pointer still says where. */
static void on_alt(int slot) {
    stack_t ss = { .ss_sp = alt[slot], .ss_size = sizeof alt[slot] };
    sigaltstack(&ss, 0);
}
static void *work(void *a) {
    long i = (long)a;
    on_alt(i);
    double x = i + 0.5;
    for (;;) {
        pthread_mutex_lock(&m); total++; pthread_mutex_unlock(&m);
        count[i]++;
        x = x * 1.000001 + 0.25; if (x > 1e6) x = i + 0.5;
        acc[i] = x;
        usleep(2000);
    }
}
/* New work on a new thread, created and joined on every line: its stack
 * comes from glibc's cache of the previous helper's. */
static void *helper(void *a) {
    long n = (long)a, s = 0;
    on_alt(N + 1);
    volatile char buf[16384];
    for (int i = 0; i < (int)sizeof buf; i++) buf[i] = (char)(n + i);
    for (int i = 0; i < (int)sizeof buf; i++) s += buf[i];
    __sync_fetch_and_add(&helpers, 1);
    return (void *)s;
}
static long expect(long n) {
    long s = 0;
    for (int i = 0; i < 16384; i++) s += (char)(n + i);
    return s;
}
static const char *log_path;
/* A crash says where, in the log (the test shows it), and dies of it. */
static void crashed(int sig, siginfo_t *si, void *uc) {
    char line[160];
    ucontext_t *u = uc;
    int fd = open(log_path, O_WRONLY | O_APPEND);
    int n = snprintf(line, sizeof line, "CRASH signal %d at %p rip %#llx rsp %#llx tid %d\n", sig, si->si_addr,
                     (unsigned long long)u->uc_mcontext.gregs[REG_RIP], (unsigned long long)u->uc_mcontext.gregs[REG_RSP], gettid());
    write(fd, line, n);
    signal(sig, SIG_DFL);
    raise(sig);
}
/* Logs "n total sum ok|BAD helpers" every 100 ms. */
int main(int argc, char **argv) {
    pthread_t t;
    struct sigaction sa;
    log_path = argv[1];
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = crashed;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    on_alt(N);
    sigaction(SIGSEGV, &sa, 0);
    sigaction(SIGBUS, &sa, 0);
    /* Each accumulator starts valid: a line may come before a thread ran. */
    for (long i = 0; i < N; i++) acc[i] = i + 0.5;
    for (long i = 0; i < N; i++) pthread_create(&t, 0, work, (void *)i);
    for (long n = 1;; n++) {
        void *r = 0;
        int bad = 0;
        usleep(100000);
        if (pthread_create(&t, 0, helper, (void *)n) || pthread_join(t, &r) || (long)r != expect(n)) bad = 1;
        long sum = 0;
        pthread_mutex_lock(&m);
        for (int i = 0; i < N; i++) { sum += count[i]; if (acc[i] < i) bad = 1; }
        FILE *f = fopen(argv[1], "a");
        fprintf(f, "%ld %ld %ld %s %ld\n", n, total, sum, bad ? "BAD" : "ok", helpers);
        fclose(f);
        pthread_mutex_unlock(&m);
    }
}
