# Homebrew formula template, filled by packaging/render.ts in the release workflow
# (for a tap such as relay-dev/homebrew-tap: `brew install relay-dev/tap/relay`).
class Relay < Formula
  desc "Drop-in kubectl port-forward that reaches anything the cluster can, TCP and UDP"
  homepage "https://github.com/relay-dev/relay"
  version "{{VERSION}}"

  on_macos do
    on_arm do
      url "{{BASE_URL}}/relay-{{VERSION}}-darwin-aarch64.tar.gz"
      sha256 "{{SHA256_DARWIN_AARCH64}}"
    end
    on_intel do
      url "{{BASE_URL}}/relay-{{VERSION}}-darwin-x86_64.tar.gz"
      sha256 "{{SHA256_DARWIN_X86_64}}"
    end
  end

  on_linux do
    on_arm do
      url "{{BASE_URL}}/relay-{{VERSION}}-linux-aarch64.tar.gz"
      sha256 "{{SHA256_LINUX_AARCH64}}"
    end
    on_intel do
      url "{{BASE_URL}}/relay-{{VERSION}}-linux-x86_64.tar.gz"
      sha256 "{{SHA256_LINUX_X86_64}}"
    end
  end

  def install
    bin.install "relay"
    generate_completions_from_executable(bin/"relay", "completion")
  end

  # No kubectl-relay link here: krelay's krew plugin has that name, and a formula cannot ask.
  def caveats
    <<~EOS
      To run relay as `kubectl relay` too (unless krelay already is):
        ln -s #{opt_bin}/relay #{HOMEBREW_PREFIX}/bin/kubectl-relay
    EOS
  end

  test do
    assert_match version.to_s, shell_output("#{bin}/relay --version")
  end
end
