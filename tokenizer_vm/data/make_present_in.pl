#!/usr/bin/perl
# Writes present_in_<V>.txt: the code-point ranges assigned in Unicode <V> (Perl's Present_In),
# one "first last" pair (hex) per line. The Rust crate unicode_categories, which Hugging Face
# tokenizers uses for BERT's control/punctuation/mark tests, carries tables of that old version;
# the TISA compiler restricts those three classes to these ranges.  Usage: perl make_present_in.pl 8.0
use strict;
my $v = shift or die "usage: $0 VERSION\n";
open(my $out, ">", "present_in_$v.txt") or die;
print $out "# code points assigned in Unicode $v (perl $^V, Unicode::UCD ", do { require Unicode::UCD; Unicode::UCD::UnicodeVersion() }, ")\n";
my $start = -1;
for my $cp (0 .. 0x110000) {
    my $in = $cp < 0x110000 && !($cp >= 0xD800 && $cp <= 0xDFFF) && chr($cp) =~ /\p{Present_In: $v}/;
    if ($in && $start < 0) { $start = $cp; }
    elsif (!$in && $start >= 0) { printf $out "%X %X\n", $start, $cp - 1; $start = -1; }
}
