#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
#define N 64
static long count[N], total, helpers;
static double acc[N];
static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
static void *work(void *a) {
    long i = (long)a;
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
/* Logs "n total sum ok|BAD helpers" every 100 ms. */
int main(int argc, char **argv) {
    pthread_t t;
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
