/* Prints the size and alignment of kvstash.h's structs, for the layout test in src/sys.rs:
 *   cc -I include -I BUILD/include tests/c_layout.c && ./a.out */
#include "kvstash/kvstash.h"
#include <stdio.h>
#include <stddef.h>
#define P(T) printf("%-24s size %zu align %zu\n", #T, sizeof(T), _Alignof(T))
int main(void){
P(kvstash_model_options);P(kvstash_chat_message);P(kvstash_store_options);P(kvstash_store_stats);
P(kvstash_gc_report);P(kvstash_session_options);P(kvstash_open_options);P(kvstash_sync_result);
P(kvstash_sample_options);P(kvstash_generation);P(kvstash_save_options);P(kvstash_open_stats);P(kvstash_file_info);
printf("fi.flash_attn %zu fi.writer %zu so.stop %zu gen.stop_reason %zu oo.cache_type_k %zu\n", offsetof(kvstash_file_info, flash_attn), offsetof(kvstash_file_info, writer), offsetof(kvstash_sample_options, stop), offsetof(kvstash_generation, stop_reason), offsetof(kvstash_open_options, cache_type_k));
}
